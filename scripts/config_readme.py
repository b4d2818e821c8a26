"""Write config/README.md, the reference of every config key, from the config schema.

    python scripts/config_readme.py

tests/test_config_reference.py fails when the committed file differs from what this writes.
"""

from pathlib import Path

from vlprompt.experiment.config_reference import render

README = Path(__file__).resolve().parents[1] / "config" / "README.md"

if __name__ == "__main__":
    README.write_text(render())
    print(f"wrote {README}")
