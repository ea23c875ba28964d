import sys

from hybridrelay.cli import main

sys.exit(main())
