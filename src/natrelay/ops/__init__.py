"""Operations: logging set-up, configuration files, service units."""
