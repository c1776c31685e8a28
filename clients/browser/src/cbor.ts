/**
 * The CBOR subset used by LINK.md control frames (RFC 8949, definite lengths only):
 * unsigned/negative integers, byte strings, text strings, arrays, maps, false/true/null,
 * and floats (decoded from 16/32/64 bits, encoded as 64 bits). Anything else is refused
 * with an error that names what was met, so a relay bug shows up as a clear message.
 */

export type CborValue =
  | number
  | bigint
  | string
  | Uint8Array
  | boolean
  | null
  | CborValue[]
  | { [key: string]: CborValue };

export class CborError extends Error {}

const textEncoder = new TextEncoder();
const textDecoder = new TextDecoder('utf-8', { fatal: true });

function head(out: number[], major: number, value: number | bigint): void {
  const v = BigInt(value);
  const m = major << 5;
  if (v < 24n) out.push(m | Number(v));
  else if (v < 0x100n) out.push(m | 24, Number(v));
  else if (v < 0x10000n) out.push(m | 25, Number(v >> 8n), Number(v & 0xffn));
  else if (v < 0x100000000n) {
    out.push(m | 26);
    for (let s = 24n; s >= 0n; s -= 8n) out.push(Number((v >> s) & 0xffn));
  } else if (v < 0x10000000000000000n) {
    out.push(m | 27);
    for (let s = 56n; s >= 0n; s -= 8n) out.push(Number((v >> s) & 0xffn));
  } else {
    throw new CborError(`integer ${v} does not fit in 64 bits`);
  }
}

function encodeInto(out: number[], value: CborValue): void {
  if (value === null) out.push(0xf6);
  else if (value === true) out.push(0xf5);
  else if (value === false) out.push(0xf4);
  else if (typeof value === 'bigint' || (typeof value === 'number' && Number.isInteger(value))) {
    const v = BigInt(value);
    if (v >= 0n) head(out, 0, v);
    else head(out, 1, -1n - v);
  } else if (typeof value === 'number') {
    const buf = new DataView(new ArrayBuffer(8));
    buf.setFloat64(0, value);
    out.push(0xfb);
    for (let i = 0; i < 8; i++) out.push(buf.getUint8(i));
  } else if (typeof value === 'string') {
    const bytes = textEncoder.encode(value);
    head(out, 3, bytes.length);
    for (const b of bytes) out.push(b);
  } else if (value instanceof Uint8Array) {
    head(out, 2, value.length);
    for (const b of value) out.push(b);
  } else if (Array.isArray(value)) {
    head(out, 4, value.length);
    for (const item of value) encodeInto(out, item);
  } else if (typeof value === 'object') {
    const keys = Object.keys(value);
    head(out, 5, keys.length);
    for (const k of keys) {
      encodeInto(out, k);
      encodeInto(out, value[k]);
    }
  } else {
    throw new CborError(`cannot encode a value of type ${typeof value}`);
  }
}

export function encode(value: CborValue): Uint8Array {
  const out: number[] = [];
  encodeInto(out, value);
  return Uint8Array.from(out);
}

function halfToNumber(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

class Decoder {
  pos = 0;
  private view: DataView;

  constructor(private data: Uint8Array) {
    this.view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  }

  private need(n: number): void {
    if (this.pos + n > this.data.length) {
      throw new CborError(`truncated CBOR: need ${n} more bytes at offset ${this.pos}`);
    }
  }

  private argument(info: number): bigint {
    if (info < 24) return BigInt(info);
    const sizes: Record<number, number> = { 24: 1, 25: 2, 26: 4, 27: 8 };
    const n = sizes[info];
    if (n === undefined) {
      throw new CborError(`unsupported CBOR additional info ${info} (indefinite lengths are not in the LINK subset)`);
    }
    this.need(n);
    let v = 0n;
    for (let i = 0; i < n; i++) v = (v << 8n) | BigInt(this.data[this.pos + i]);
    this.pos += n;
    return v;
  }

  private length(info: number): number {
    const v = this.argument(info);
    if (v > BigInt(this.data.length)) throw new CborError(`CBOR length ${v} exceeds the input size`);
    return Number(v);
  }

  value(depth = 0): CborValue {
    if (depth > 32) throw new CborError('CBOR nesting deeper than 32');
    this.need(1);
    const ib = this.data[this.pos++];
    const major = ib >> 5;
    const info = ib & 0x1f;
    switch (major) {
      case 0:
        return smallInt(this.argument(info));
      case 1:
        return smallInt(-1n - this.argument(info));
      case 2: {
        const n = this.length(info);
        this.need(n);
        const out = this.data.slice(this.pos, this.pos + n);
        this.pos += n;
        return out;
      }
      case 3: {
        const n = this.length(info);
        this.need(n);
        const s = textDecoder.decode(this.data.subarray(this.pos, this.pos + n));
        this.pos += n;
        return s;
      }
      case 4: {
        const n = this.length(info);
        const out: CborValue[] = [];
        for (let i = 0; i < n; i++) out.push(this.value(depth + 1));
        return out;
      }
      case 5: {
        const n = this.length(info);
        const out: { [key: string]: CborValue } = {};
        for (let i = 0; i < n; i++) {
          const k = this.value(depth + 1);
          if (typeof k !== 'string') throw new CborError(`CBOR map key of type ${typeof k}; LINK maps use text keys`);
          out[k] = this.value(depth + 1);
        }
        return out;
      }
      case 7:
        return this.simple(info);
      default:
        throw new CborError(`CBOR major type ${major} (tags) is not in the LINK subset`);
    }
  }

  private simple(info: number): CborValue {
    if (info === 20) return false;
    if (info === 21) return true;
    if (info === 22) return null;
    const sizes: Record<number, number> = { 25: 2, 26: 4, 27: 8 };
    const n = sizes[info];
    if (n === undefined) throw new CborError(`CBOR simple value ${info} is not in the LINK subset`);
    this.need(n);
    const at = this.pos;
    this.pos += n;
    if (n === 2) return halfToNumber(this.view.getUint16(at));
    if (n === 4) return this.view.getFloat32(at);
    return this.view.getFloat64(at);
  }
}

function smallInt(v: bigint): number | bigint {
  return v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v;
}

export function decode(data: Uint8Array): CborValue {
  const d = new Decoder(data);
  const v = d.value();
  if (d.pos !== data.length) throw new CborError(`${data.length - d.pos} trailing bytes after the CBOR value`);
  return v;
}
