// Headless-Chromium page for tests/test_browser_http.py.
//
// http.html?moq=http://127.0.0.1:PORT/ hands @moq/net an http:// URL and no certificate hash: the
// library fetches /certificate.sha256 from that host and port, pins it, and dials WebTransport to
// https://127.0.0.1:PORT/ (WebSocket is turned off unless ws=1). The page reads one group of broadcast "clock",
// track "seconds", and POSTs {version, frames, resources, error} to /result.
import * as Net from "@moq/net";

const params = new URLSearchParams(location.search);
const log = { version: null, frames: [], resources: [], error: null };

function show(line) {
	const p = document.createElement("p");
	p.textContent = line;
	document.body.append(p);
}

async function report() {
	log.resources = performance.getEntriesByType("resource").map((entry) => entry.name);
	show(JSON.stringify(log));
	await fetch("/result", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(log) });
}

async function run() {
	// ws=1: as the player does, WebSocket races WebTransport after its 500 ms head start
	const websocket = params.get("ws") === "1" ? {} : { enabled: false };
	const conn = await Net.Connection.connect(new URL(params.get("moq")), { websocket });
	log.version = conn.version;
	show(`connected ${conn.version}`);
	const track = conn.consume(Net.Path.from("clock")).subscribe("seconds");
	const group = await track.nextGroup();
	if (!group) throw new Error("track ended");
	const decoder = new TextDecoder();
	for (;;) {
		const frame = await group.readFrame();
		if (!frame) break;
		log.frames.push(decoder.decode(frame.payload));
	}
	conn.close();
}

const deadline = new Promise((_, reject) => setTimeout(() => reject(new Error("page timeout")), 25000));
Promise.race([run(), deadline])
	.catch((err) => {
		log.error = String(err && err.stack ? err.stack : err);
	})
	.finally(report);
