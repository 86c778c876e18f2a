"""Build hook: the top-level ``bundles/`` folder (the one source of the bundle configs) is
copied into ``screener_plans/bundles`` of wheels and non-editable installs. Everything else
is declared in setup.cfg."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithBundles(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads bundles/ of the checkout itself
        source = Path(__file__).resolve().parent / "bundles"
        target = Path(self.build_lib) / "screener_plans" / "bundles"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithBundles})
