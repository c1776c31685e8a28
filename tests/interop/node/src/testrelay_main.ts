/**
 * Runs selftest's stand-in relay (TestRelay: no token checks) as a process, so the Python
 * driver can be exercised before/without the project's relay. Prints one line,
 * "ready tcp://127.0.0.1:PORT", then routes until killed.
 */
import { TestRelay } from './testrelay';

const relay = new TestRelay();
relay.listen().then((port) => process.stdout.write(`ready tcp://127.0.0.1:${port}\n`));
