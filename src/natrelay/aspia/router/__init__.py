"""The Aspia router (``aspia_router``): store, key pool, session logic and its asyncio shell."""
