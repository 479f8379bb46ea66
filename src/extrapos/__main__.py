"""`python -m extrapos` and the `extrapos` command (`run`). Ctrl-C while the command line
itself loads is one line and exit 130 too, as it is later (`extrapos.cli.main`)."""

import sys


def run() -> int:
    try:
        from extrapos.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("extrapos: interrupted\n")
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
