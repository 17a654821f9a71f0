"""``natrelay service-unit``: install the systemd unit for ``aspia_relay``, ``aspia_router``, ``strelay``
or ``natrelay serve``.

Aspia's packages ship these units; a pip install has no package scripts, so this writes the
unit (pointing at the installed program) and says how to enable it, after which the seed
document's ``systemctl enable aspia-relay`` and ``service aspia-relay start`` work as written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path
from typing import Any

from natrelay.ops.systemd import default_command, render_unit, unit_file_name, write_unit

PROGRAMS = {"relay": "aspia_relay", "router": "aspia_router", "strelay": "strelay", "serve": "natrelay"}


def add_parser(sub: Any) -> None:
    p = sub.add_parser("service-unit", help="install the systemd unit of aspia_relay, aspia_router, strelay "
                       "or natrelay serve",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("program", choices=("relay", "router", "strelay", "serve"), help="which service")
    p.add_argument("--dir", type=Path, default=Path("/etc/systemd/system"),
                   help="where units live (default %(default)s)")
    p.add_argument("--print", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--force", action="store_true", help="replace an existing unit")
    p.set_defaults(handler=service_unit_command)


def service_unit_command(args: argparse.Namespace) -> int:
    program = PROGRAMS[args.program]
    found = shutil.which(program)
    if found is None:
        print(f"natrelay: error: {program} is not on PATH; install natrelay first", file=sys.stderr)
        return 1
    command = [str(Path(found).resolve()), *default_command(args.program)[1:]]
    if args.print:
        print(render_unit(args.program, command=command), end="")
        return 0
    try:
        path = write_unit(args.program, args.dir, overwrite=args.force, command=command)
    except FileExistsError:
        print(f"natrelay: error: {args.dir / unit_file_name(args.program)} exists; --force replaces it",
              file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"natrelay: error: cannot write the unit into {args.dir}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    name = path.stem
    print(f"wrote {path}\nnow: sudo systemctl daemon-reload && sudo systemctl enable {name} && "
          f"sudo service {name} start")
    return 0
