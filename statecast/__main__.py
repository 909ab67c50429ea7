import sys

from statecast.cli import main

sys.exit(main())
