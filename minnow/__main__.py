from minnow.cli import app

app(prog_name="minnow")
