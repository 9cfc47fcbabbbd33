"""The README's Python examples run as written: its ```python blocks, in order, as one program
(each block may use what the ones before it defined)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 4, "the README's examples moved: this test reads ```python blocks"
    program = "\n".join(blocks)
    exec(compile(program, str(README), "exec"), {"__name__": "readme"})  # noqa: S102
