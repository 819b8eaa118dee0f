"""``python -m interp`` runs the command line (:func:`interp.cli.main`)."""
import sys

from .cli import main

sys.exit(main())
