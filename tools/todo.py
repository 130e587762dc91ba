"""TodoWrite: the model's plan, a list of items with a status, kept by the loop and shown."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from m2agent.tools.base import Description, ToolAnnotations, ToolError, ToolResult


class TodoItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    content: str = Field(min_length=1, description='What to do, imperative ("Run the tests").')
    status: Literal["pending", "in_progress", "completed"] = Field(description="Progress.")
    activeForm: str | None = Field(
        default=None, description="Present continuous form, shown while in progress."
    )


class TodoArgs(BaseModel):
    model_config = ConfigDict(extra="forbid")
    todos: list[TodoItem] = Field(description="The whole updated list (it replaces the old one).")


class TodoList:
    """The current plan (state owned by the session, passed to the tool)."""

    def __init__(self) -> None:
        self.items: list[TodoItem] = []

    def render(self) -> str:
        marks = {"pending": "[ ]", "in_progress": "[~]", "completed": "[x]"}
        return "\n".join(f"{marks[i.status]} {i.content}" for i in self.items) or "(no todos)"


class TodoWriteTool:
    name: ClassVar[str] = "TodoWrite"
    description: ClassVar[str] = (
        "Write your plan as a todo list (the whole list each time). Keep exactly one item "
        "in_progress while working; mark items completed as soon as they are done."
    )
    Args: ClassVar[type[BaseModel]] = TodoArgs
    annotations: ClassVar[ToolAnnotations] = ToolAnnotations(read_only=True, destructive=False)

    def __init__(self, todos: TodoList) -> None:
        self.todos = todos

    def describe(self, args: TodoArgs) -> Description:
        done = sum(item.status == "completed" for item in args.todos)
        return Description(f"{done}/{len(args.todos)} done")

    def run(self, args: TodoArgs) -> ToolResult:
        if sum(item.status == "in_progress" for item in args.todos) > 1:
            raise ToolError("only one todo may be in_progress at a time")
        self.todos.items = list(args.todos)
        return ToolResult(
            self.todos.render(), metadata={"todos": [i.model_dump() for i in args.todos]}
        )
