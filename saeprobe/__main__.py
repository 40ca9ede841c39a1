import sys

from saeprobe.cli import main

sys.exit(main())
