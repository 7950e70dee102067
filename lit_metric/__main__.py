"""``python -m lit_metric`` runs the ``lit-metric`` command."""

from lit_metric.cli import main

if __name__ == "__main__":
    main()
