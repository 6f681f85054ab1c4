import sys

from pdo_hub.cli import main

sys.exit(main())
