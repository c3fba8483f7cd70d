from modelcycle.cli import app

# Guarded: `serve.workers=N` spawns workers that import this module again as __mp_main__.
if __name__ == "__main__":
    app()
