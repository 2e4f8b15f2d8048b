"""``python -m visage_ml`` is the ``visage`` command."""

from visage_ml.app.cli import app

if __name__ == "__main__":
    app()
