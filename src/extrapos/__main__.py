import sys

from extrapos.cli import main

sys.exit(main())
