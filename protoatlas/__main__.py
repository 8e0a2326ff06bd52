import sys

from protoatlas.cli import main

sys.exit(main())
