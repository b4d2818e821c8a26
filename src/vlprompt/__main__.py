import sys

from vlprompt.cli import main

sys.exit(main())
