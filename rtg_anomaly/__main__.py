"""``python -m rtg_anomaly`` runs the command line."""

from .cli import main

raise SystemExit(main())
