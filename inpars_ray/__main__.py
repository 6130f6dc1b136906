"""``python -m inpars_ray`` runs the CLI."""
import sys

from inpars_ray.cli import main

sys.exit(main())
