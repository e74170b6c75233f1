"""``python -m mixroute.extproc``: the same as ``mixroute extproc``."""

from __future__ import annotations

import argparse
import sys

from mixroute.extproc import server


def main() -> int:
    description = (server.__doc__ or "").split("\n\n")[0]
    parser = argparse.ArgumentParser(prog="mixroute extproc", description=description)
    server.add_arguments(parser)
    return server.run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
