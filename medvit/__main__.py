import sys

from medvit.cli import main

sys.exit(main())
