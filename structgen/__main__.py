"""``python -m structgen``: the same command as ``structgen``."""

import sys

from structgen.cli import main

sys.exit(main())
