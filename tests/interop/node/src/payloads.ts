/** Payload helpers for the command interface: files, hashes, deterministic UTF-8 patterns. */
import { createHash } from 'crypto';
import { readFileSync } from 'fs';

const encoder = new TextEncoder();
const strictDecoder = new TextDecoder('utf-8', { fatal: true });

export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

export function sha256Hex(data: Uint8Array | string): string {
  return createHash('sha256').update(typeof data === 'string' ? utf8(data) : data).digest('hex');
}

/** A command's text payload: "payload" (string) or "payload_file" (path, strict UTF-8). */
export function textPayload(cmd: any): string {
  if (typeof cmd.payload_file === 'string') {
    const bytes = readFileSync(cmd.payload_file);
    try {
      return strictDecoder.decode(bytes);
    } catch {
      throw new Error(`payload_file ${cmd.payload_file} is not valid UTF-8`);
    }
  }
  if (cmd.payload === undefined) return '';
  if (typeof cmd.payload !== 'string') throw new Error('"payload" must be a string');
  return cmd.payload;
}

/** A command's byte payload: "payload_file", "payload_hex", or "payload" (its UTF-8 bytes). */
export function bytesPayload(cmd: any): Uint8Array {
  if (typeof cmd.payload_file === 'string') return new Uint8Array(readFileSync(cmd.payload_file));
  if (typeof cmd.payload_hex === 'string') return new Uint8Array(Buffer.from(cmd.payload_hex, 'hex'));
  return utf8(textPayload(cmd));
}

/**
 * Exactly nBytes of UTF-8: the pattern repeated, cut on a character boundary, then padded
 * with "." — so a multi-byte pattern exercises character-boundary handling at any size.
 */
export function patternText(pattern: string, nBytes: number): string {
  if (!pattern) throw new Error('pattern must not be empty');
  const unit = utf8(pattern).length;
  const whole = Math.floor(nBytes / unit);
  let text = pattern.repeat(whole);
  let left = nBytes - whole * unit;
  for (const ch of pattern) {
    const n = utf8(ch).length;
    if (n > left) break;
    text += ch;
    left -= n;
  }
  return text + '.'.repeat(left);
}

/** Splits text into pieces of at most maxBytes UTF-8 bytes, never inside a character. */
export function splitText(text: string, maxBytes: number): string[] {
  const pieces: string[] = [];
  let current = '';
  let size = 0;
  for (const ch of text) {
    const n = utf8(ch).length;
    if (size + n > maxBytes && current) {
      pieces.push(current);
      current = '';
      size = 0;
    }
    current += ch;
    size += n;
  }
  if (current || pieces.length === 0) pieces.push(current);
  return pieces;
}
