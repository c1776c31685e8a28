/**
 * The declarations (lkedge.d.mts) against what the bundle is made of (src/index.ts and the
 * livekit-client sources it re-exports): typecheck.mjs compiles this file, and any
 * declaration the code does not keep is an error here.
 *
 * What the bundle gives a page (values, instances, what handlers receive) must be
 * assignable to its declaration; what a page gives the bundle (options, handlers, tokens)
 * must be assignable the other way.
 */
import type * as D from '../lkedge.mjs';
import * as I from '../src/index';
import type * as L from '../src/lk';

function gives<T>(_value: T): void {}
const an = <T>(): T => undefined as unknown as T;

// the bundle's values and instances
gives<typeof D.RpcError>(I.RpcError);
gives<typeof D.LinkError>(I.LinkError);
gives<typeof D.Room.connect>(I.Room.connect);
gives<D.Room>(an<I.Room>());
gives<D.LocalParticipant>(an<I.LocalParticipant>());
gives<D.ParticipantInfo>(an<I.ParticipantInfo>());
gives<D.ConnectionState>(an<I.ConnectionState>());
gives<D.RpcInvocationData>(an<L.RpcInvocationData>());
gives<D.TextStreamReader>(an<L.TextStreamReader>());
gives<D.ByteStreamReader>(an<L.ByteStreamReader>());
gives<D.TextStreamWriter>(an<L.TextStreamWriter>());
gives<D.ByteStreamWriter>(an<L.ByteStreamWriter>());
gives<D.TextStreamInfo>(an<L.TextStreamInfo>());
gives<D.ByteStreamInfo>(an<L.ByteStreamInfo>());

// what a page passes in
gives<I.ConnectOptions>(an<D.ConnectOptions>());
gives<I.TokenSource>(an<D.TokenSource>());
gives<I.LogSink>(an<D.LogSink>());
gives<L.PerformRpcParams>(an<D.PerformRpcParams>());
gives<L.SendTextOptions>(an<D.SendTextOptions>());
gives<L.SendBytesOptions>(an<D.SendBytesOptions>());
gives<L.SendFileOptions>(an<D.SendFileOptions>());
gives<L.StreamTextOptions>(an<D.StreamTextOptions>());
gives<L.StreamBytesOptions>(an<D.StreamBytesOptions>());
gives<L.TextStreamHandler>(an<D.TextStreamHandler>());
gives<L.ByteStreamHandler>(an<D.ByteStreamHandler>());

// every name the bundle exports is declared, and no other value
const exported: Record<keyof typeof I, true> = { Room: true, LocalParticipant: true, RpcError: true, LinkError: true };
const declared: Record<keyof typeof D, true> = exported;
gives(declared);
