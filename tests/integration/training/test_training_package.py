"""`import genalign.training` and its torch-free modules stay cheap: no torch, no peft."""

import subprocess
import sys


def test_importing_the_package_imports_no_torch():
    code = (
        "import sys\n"
        "import genalign.training\n"
        "import genalign.training.adapters, genalign.training.base_model\n"
        "import genalign.training.launch, genalign.training.schedules, genalign.training.seeds\n"
        "print(sorted(m for m in ('torch', 'peft', 'transformers') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
