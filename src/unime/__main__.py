import sys

from unime.cli import main

sys.exit(main())
