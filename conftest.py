"""pytest configuration shared by the library tests and nbval's run over the chapters.

Figures glued for a ``{glue:figure}`` directive (``report.glue_figure``) are stored under
``application/papermill.record/image/png``. nbval skips ``image/png`` but would compare this
mime type as text, byte for byte (and push a 100 kB line through every sanitizer regex): skip
it like the plain images.
"""

GLUED_PNG = "application/papermill.record/image/png"


def pytest_collection_modifyitems(items):
    """Add the glued-PNG mime type to every collected notebook's ``skip_compare``."""
    for item in items:
        notebook = getattr(item, "parent", None)
        skip = getattr(notebook, "skip_compare", None)
        if skip is not None and GLUED_PNG not in skip:
            notebook.skip_compare = (*skip, GLUED_PNG)
