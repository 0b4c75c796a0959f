// Headless-Chromium interop page for tests/test_browser.py.
//
// index.html?lib=lite|net&moq=https://127.0.0.1:PORT/&fp=<sha256 hex>&groups=N
// connects with @moq/lite or @moq/net over WebTransport only, subscribes to broadcast "clock" track
// "seconds", reads N groups, and POSTs {lib, version, groups: [{sequence, frames}], error} to /result.
// With &transport=websocket (and moq=http://HOST:PORT/, a plain TCP listener) the page hides the
// browser's WebTransport, as Safari and older Firefox lack it, so the library connects over WebSocket.
import * as Lite from "@moq/lite";
import * as Net from "@moq/net";

const params = new URLSearchParams(location.search);
const lib = params.get("lib") ?? "lite";
const wanted = Number(params.get("groups") ?? "2");
const log = { lib, version: null, transport: params.get("transport") ?? "webtransport", groups: [], error: null };

function show(line) {
	const p = document.createElement("p");
	p.textContent = line;
	document.body.append(p);
}

function fingerprintBytes(hex) {
	return new Uint8Array(hex.match(/../g).map((byte) => parseInt(byte, 16)));
}

async function report() {
	show(JSON.stringify(log));
	await fetch("/result", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(log) });
}

async function run() {
	const Moq = lib === "net" ? Net : Lite;
	const websocket = params.get("transport") === "websocket";
	if (websocket) delete globalThis.WebTransport;
	const conn = await Moq.Connection.connect(new URL(params.get("moq")), websocket ? {} : {
		webtransport: { serverCertificateHashes: [{ algorithm: "sha-256", value: fingerprintBytes(params.get("fp")) }] },
		websocket: { enabled: false },
	});
	log.version = conn.version;
	show(`connected ${conn.version}`);
	const broadcast = conn.consume(Moq.Path.from("clock"));
	const track = lib === "net" ? broadcast.subscribe("seconds") : broadcast.subscribe("seconds", 0);
	const decoder = new TextDecoder();
	while (log.groups.length < wanted) {
		const group = await track.nextGroup();
		if (!group) throw new Error("track ended");
		const frames = [];
		for (;;) {
			const frame = await group.readFrame();
			if (!frame) break;
			frames.push(decoder.decode(lib === "net" ? frame.payload : frame));
		}
		log.groups.push({ sequence: group.sequence, frames });
		show(`group ${group.sequence}: ${frames.join(" ")}`);
	}
	conn.close();
}

const deadline = new Promise((_, reject) => setTimeout(() => reject(new Error("page timeout")), 25000));
Promise.race([run(), deadline])
	.catch((err) => {
		log.error = String(err && err.stack ? err.stack : err);
	})
	.finally(report);
