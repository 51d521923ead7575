"""The sandbox DC: a local MTProto server for stock Telethon, its admin API and a
deterministic OpenAI-compatible model. Entry points: server.Sandbox, cli.main,
client.register_sandbox_key / make_client, admin_client.SandboxAdmin."""
