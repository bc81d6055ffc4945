"""Sphinx configuration: the API reference (autodoc + numpydoc) and one page per
paper with the reproduced figures. Built in CI with ``sphinx-build -W``."""
import mithridate

project = "mithridate"
author = "mithridate developers"
copyright = "2026, mithridate developers"
release = version = mithridate.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.mathjax", "sphinx.ext.viewcode", "numpydoc",
              "myst_parser"]
# figures/ holds the reproduced PNGs and summaries the pages include, not pages.
exclude_patterns = ["_build", "figures"]
source_suffix = {".rst": "restructuredtext"}
html_theme = "alabaster"
html_static_path = []

autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True,
                           # scikit-learn's generated metadata-routing setters
                           "exclude-members": "set_fit_request,set_score_request,set_predict_request"}
# Classes list their members through autodoc, not numpydoc's autosummary tables.
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
