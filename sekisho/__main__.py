import sys

from sekisho.cli import main

sys.exit(main())
