# SPDX-License-Identifier: Apache-2.0
"""Test-only start-up hook (on PYTHONPATH via the `qwen_edit_patch_env` fixture): shrink QwenImageEditPipeline's
fixed ~1024² input resize to QWEN_EDIT_AREA pixels, so a tiny pipeline call takes 0.3 s instead of ~50 s on CPU.

The patch is applied lazily, when the pipeline module is first imported, so other imports pay nothing.
"""

import importlib.abc
import os
import sys

TARGET = "diffusers.pipelines.qwenimage.pipeline_qwenimage_edit"


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader_exec = spec.loader.exec_module

        def exec_module(module):
            loader_exec(module)
            original = module.calculate_dimensions
            area = int(os.environ.get("QWEN_EDIT_AREA", 64 * 64))
            module.calculate_dimensions = lambda _area, ratio: original(area, ratio)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("QWEN_EDIT_AREA"):
    import importlib.util

    sys.meta_path.insert(0, _PatchOnImport())
