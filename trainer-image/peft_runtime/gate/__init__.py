"""The engine gate: the only door from the engine Service to the engine. It forwards the routes clients
use (completions, chat, models, health, metrics) to the engine on the pod's loopback and refuses the rest,
so no client of the Service can load, unload or reconfigure anything; the adapter agent, inside the pod,
talks to the engine directly."""
