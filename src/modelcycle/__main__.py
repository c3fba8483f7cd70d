"""`python -m modelcycle` and the `modelcycle` console script.

Light on purpose: `serve.workers=N` spawns workers that import the console script's module
again (as `__mp_main__`). With the CLI imported at the top of it, a worker spent seconds
importing before it could answer uvicorn's health check, which kills a worker silent for
5 s and starts another: the workers never came up.
"""


def main() -> None:
    """Run the `modelcycle` command line."""
    from modelcycle.cli import app

    app()


# Guarded: spawned workers import this module again, and must not run the command.
if __name__ == "__main__":
    main()
