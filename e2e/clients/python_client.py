"""Drives the gateway through a Python client generated from its
/openapi.json by openapi-python-client: typed models in, typed models out.
Any field the document gets wrong fails the parse here.

Usage: python_client.py <generated dir> <gateway url> <admin token>
"""

import base64
import sys

sys.path.insert(0, sys.argv[1])

from orquestra_client import AuthenticatedClient  # noqa: E402
from orquestra_client.api.bots import bots_create, bots_get, bots_list  # noqa: E402
from orquestra_client.api.ops import session_me  # noqa: E402
from orquestra_client.api.tasks import tasks_create, tasks_events, tasks_get  # noqa: E402
from orquestra_client.models import Bot, BotBody, CreateBody, ErrorBody, Task  # noqa: E402

client = AuthenticatedClient(base_url=sys.argv[2], token=sys.argv[3], raise_on_unexpected_status=True)

me = session_me.sync(client=client)
assert me is not None and me["role"] == "admin", me

bot = bots_create.sync(
    client=client,
    body=BotBody(name="generated", ip_address="127.0.0.1", port=5999, systems=["Generated"]),
)
assert isinstance(bot, Bot), bot
assert bot.status.value == "AVAILABLE", bot
assert bots_get.sync(client=client, id=bot.id).name == "generated"
assert any(b.id == bot.id for b in bots_list.sync(client=client))

attachment = base64.b64encode(b"name\nada\n").decode()
task = tasks_create.sync(
    client=client,
    body=CreateBody(description="from a generated client", system="Generated", attachment=attachment),
)
assert isinstance(task, Task), task
assert task.status.value == "WAITING" and task.rows_total == 1, task
assert tasks_get.sync(client=client, id=task.id).description == "from a generated client"
events = tasks_events.sync(client=client, id=task.id)
assert events and events[0].type_ == "STATUS_CHANGE", events

refused = tasks_create.sync(
    client=client, body=CreateBody(description="x", system="Generated", attachment="not base64!")
)
assert isinstance(refused, ErrorBody) and refused.error.code, refused
print("ok", bot.id, task.id)
