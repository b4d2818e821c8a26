"""config/README.md, the configuration guide the Snakemake workflow catalogue shows, is generated from the config
schema: it names every key of the schema and is exactly what `python scripts/config_readme.py` writes."""

from pathlib import Path

from vlprompt.experiment.config_reference import keys, render

README = Path(__file__).resolve().parents[1] / "config" / "README.md"


def test_every_schema_key_has_a_row_in_config_readme():
    text = README.read_text()
    missing = [key for key, _, _ in keys() if f"| `{key}` |" not in text]
    assert missing == [], f"config/README.md lacks {missing}: run python scripts/config_readme.py"


def test_config_readme_is_the_generated_one():
    assert README.read_text() == render(), (
        "config/README.md differs from the schema: run python scripts/config_readme.py"
    )


def test_a_new_schema_key_gets_a_row_with_its_type_default_and_description():
    schema = {
        "required": ["a"],
        "properties": {
            "a": {"type": "string", "description": "first | one"},
            "b": {"type": "object", "properties": {"c": {"enum": [1, 2], "default": 1}}},
            "m": {
                "type": "object",
                "additionalProperties": {"type": "object", "properties": {"d": {"type": "integer"}}},
            },
        },
    }
    assert [k for k, _, _ in keys(schema)] == ["a", "b", "b.c", "m", "m.<name>.d"]
    rows = render(schema).split("|---|---|---|---|\n")[1].splitlines()
    assert rows[0] == "| `a` | string | *required* | first \\| one |"
    assert rows[2] == "| `b.c` | 1 \\| 2 | `1` |  |"
