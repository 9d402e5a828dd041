"""``python -m efficientsam3_ros.synthetic KIND OUT_DIR ...`` (same options as ``efficientsam3 world``)."""

from efficientsam3_ros.synthetic.cli import main

raise SystemExit(main())
