// Signs and verifies with the @moq/token library in one node process, for tests/test_auth.py.
// stdin: {"sign": [{"key": <JWK text>, "claims": {...}}], "verify": [{"key": <JWK text>, "token": "...", "root": "..."}]}
// stdout: {"signed": [<token> | {"error": "..."}], "verified": [{"ok": true, "claims": {...}} | {"ok": false, "error": "..."}]}
import { readFileSync } from "node:fs";
import { load, loadPublic, sign, verify } from "@moq/token";

const jobs = JSON.parse(readFileSync(0, "utf-8"));
const message = (error) => (error instanceof Error ? error.message : String(error));

const signed = [];
for (const job of jobs.sign ?? []) {
	try {
		signed.push(await sign(load(job.key), job.claims));
	} catch (error) {
		signed.push({ error: message(error) });
	}
}

const verified = [];
for (const job of jobs.verify ?? []) {
	try {
		let key;
		try {
			key = loadPublic(job.key);
		} catch {
			key = load(job.key);
		}
		verified.push({ ok: true, claims: await verify(key, job.token, job.root ?? "") });
	} catch (error) {
		verified.push({ ok: false, error: message(error) });
	}
}

process.stdout.write(JSON.stringify({ signed, verified }));
