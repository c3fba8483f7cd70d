from modelcycle.cli import app

app()
