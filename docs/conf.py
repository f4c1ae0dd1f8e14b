"""Sphinx configuration of the datamanager reference.

Build from the repository root, with datamanager importable (installed, or on
PYTHONPATH):  python -m sphinx -W -b html docs /tmp/docs_html
"""

project = "datamanager"
author = "the datamanager authors"
copyright = "the datamanager authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "matplotlib.sphinxext.plot_directive",
]

# Pictures drawn by the code from sample files (see recordings.rst): the
# picture alone, with the code shown above it.
plot_include_source = True
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 100)]

# The API pages list members explicitly; numpydoc's own member tables would
# repeat them (and warn about every inherited MutableMapping method).
numpydoc_show_class_members = False
autodoc_member_order = "bysource"
autosummary_generate = False
autodoc_typehints = "none"

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_theme_options = {"description": "Results of many simulation runs, collated"}
