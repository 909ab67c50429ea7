"""Float32 copies of saved linear fits (bench.accuracy --ridge-dir) for a device call, which
carries at most 64 MiB. The model's linear path is float32 and `set_linear_path` casts the fit to
it, so a model started from a copy is the same as one started from the original.

    python bench/device/fits32.py SRC DST GLOB...   (e.g. '*_L96_*')
"""

import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
dst.mkdir(parents=True, exist_ok=True)
for pattern in sys.argv[3:]:
    for path in sorted(src.glob(pattern)):
        exact = ("ridge", "channel_pull")  # settings, not weights
        tensors = {k: v if k in exact else v.float() for k, v in load_file(str(path)).items()}
        save_file(tensors, str(dst / path.name))
        print(path.name)
