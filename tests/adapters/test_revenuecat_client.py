"""The provider client over HTTP against the simulator: shared between threads (sessions
borrowed and reused, not one per thread or greenlet), proxies and credentials from the
environment read once, never per request."""

from __future__ import annotations

import threading
import time

from adapters.revenuecat import RevenueCatClient


def test_threads_read_concurrently_and_reuse_their_sessions(simulator):
    users = ["t0", "t1", "t2", "t3"]
    for user in users:
        simulator.state.purchase_subscription(user, "premium_monthly")
    client = RevenueCatClient(simulator.url, simulator.api_key)
    bodies, errors = {}, []
    start = threading.Barrier(len(users))

    def read(user: str) -> None:
        try:
            start.wait()
            for _ in range(2):
                bodies[user] = client.get_subscriber(user)
        except Exception as exc:
            errors.append(exc)

    simulator.state.latency_ms = 200  # each read takes 0.2 s at the provider
    threads = [threading.Thread(target=read, args=(u,)) for u in users]
    began = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    simulator.state.latency_ms = 0
    assert errors == []
    assert {u: b["subscriber"]["original_app_user_id"] for u, b in bodies.items()} == {u: u for u in users}
    assert elapsed < 1.2  # 8 reads of 0.2 s: in parallel, not one after another (1.6 s)
    assert client.sessions_made <= len(users)  # one per concurrent call at most
    made = client.sessions_made
    for user in users:  # later calls (another thread, another greenlet) reuse them
        threading.Thread(target=client.get_subscriber, args=(user,)).start()
        time.sleep(0.05)
    assert client.sessions_made == made
    client.close()


def test_proxy_settings_come_from_the_environment_once_and_netrc_never_replaces_our_key(
    monkeypatch, tmp_path, simulator
):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    proxied = RevenueCatClient("https://api.revenuecat.com", "sk_x")
    assert proxied._new_session().proxies.get("https") == "http://proxy.example:3128"
    # A ~/.netrc entry for the provider's host would make requests send its credentials
    # instead of our Authorization header when trust_env is on.
    home = tmp_path / "home"
    home.mkdir()
    host = simulator.url.split("//", 1)[1].split(":")[0]
    (home / ".netrc").write_text(f"machine {host} login someone password other\n")
    (home / ".netrc").chmod(0o600)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    simulator.state.purchase_subscription("n1", "premium_monthly")
    client = RevenueCatClient(simulator.url, simulator.api_key)
    assert client.get_subscriber("n1")["subscriber"]["original_app_user_id"] == "n1"
