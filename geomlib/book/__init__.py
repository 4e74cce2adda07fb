"""The book: :mod:`~geomlib.book.runner` executes the notebooks with papermill and builds the
Jupyter Book from the executed copies (``python -m geomlib.book.runner``)."""
