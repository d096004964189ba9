"""The web app (Streamlit): `saelab app --db FILE` serves `main.py`, whose pages (`views/`) read
the results store through `db` and `common` (read-only, cached by the file's state). The only
write is the steering playground's run, made on the user's request."""
