"""``python -m mixroute.sim --port P --model NAME``."""

import sys

from mixroute.sim.cli import main

if __name__ == "__main__":
    sys.exit(main())
