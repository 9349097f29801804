"""Start the lipdub studio: ``python app.py --port 7860 --device auto``, then open http://127.0.0.1:7860.
The options (``--help``) are those of ``lipdub serve``, both read from lipdub.studio.settings."""

from lipdub.studio.web.app import main

if __name__ == "__main__":
    main()
