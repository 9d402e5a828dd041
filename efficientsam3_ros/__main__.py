"""``python -m efficientsam3_ros`` is the ``efficientsam3`` command."""

import sys

from efficientsam3_ros.cli import main

sys.exit(main())
