"""A modelcycle task from outside its repository: the worked example of "Add a task"."""
