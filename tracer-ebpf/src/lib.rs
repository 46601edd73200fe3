//! The ABI between dptrace's kernel-side programs and its userspace loader.
//!
//! Everything here is `#[repr(C)]` plain data: the same bytes are written by the eBPF
//! programs (into ring buffers and read-only globals) and read by `tracer`. Kernel layout
//! never appears here as numbers: the programs receive every struct and tracepoint offset
//! through the `*Config` globals, which userspace fills from BTF and tracefs at load time.
#![no_std]

/// Marks an offset or enum value that this kernel does not have (field absent, no BTF, ...).
pub const ABSENT: u32 = u32::MAX;

/// How many bytes of packet headers, starting at the network header, a drop event carries.
/// Enough for IPv6 (40) + TCP with options (60) or the ICMP error's quoted header.
pub const HEADER_BYTES: usize = 128;

/// Names of maps and globals shared by both sides.
pub mod names {
    pub const EVENTS: &str = "EVENTS";
    pub const LOST: &str = "LOST";
    pub const DROP_CONFIG: &str = "DROP_CONFIG";
    pub const PROG_KFREE_SKB: &str = "kfree_skb";
    /// The same as a raw tracepoint (5.17+ prototype, checked against BTF): no trace record.
    pub const PROG_KFREE_SKB_RAW: &str = "kfree_skb_raw";
    pub const PROG_DROP_KPROBE: &str = "drop_kprobe";
    pub const PROG_DROP_FENTRY: &str = "drop_fentry";
    pub const LINK_CONFIG: &str = "LINK_CONFIG";
    pub const PROG_SENDMSG: &str = "nl_sendmsg";
    pub const PROG_SENDTO: &str = "nl_sendto";
    pub const PROG_RECVMSG_ENTER: &str = "nl_recvmsg_enter";
    pub const PROG_RECVFROM_ENTER: &str = "nl_recvfrom_enter";
    pub const PROG_RECV_EXIT: &str = "nl_recv_exit";
    pub const PROG_EXTACK: &str = "nl_extack";
    pub const PROG_SOCK_SEND: &str = "nl_sock_send";
    pub const PROG_IOCTL: &str = "link_ioctl";
    pub const PROG_MODULE_REQUEST: &str = "module_request";
    pub const PROG_MODULE_LOAD: &str = "module_load";
    pub const PROG_RTNL_REQUEST: &str = "rtnl_request";
    pub const PROG_RTNL_RESULT: &str = "rtnl_result";
    pub const NETFILTER_CONFIG: &str = "NETFILTER_CONFIG";
    pub const PROG_TCP_SEND_RESET: &str = "tcp_send_reset";
    pub const PROG_TCP_RECEIVE_RESET: &str = "tcp_receive_reset";
    pub const PROG_ICMP_SEND: &str = "icmp_send";
    pub const PROG_SOCK_SET_STATE: &str = "inet_sock_set_state";
    /// kprobes on the functions that answer a packet (RST, ICMP error), by the position of
    /// their skb argument.
    pub const PROG_ANSWER_SKB0: &str = "answer_skb0";
    pub const PROG_ANSWER_SKB1: &str = "answer_skb1";
    pub const PROG_ANSWER_SKB2: &str = "answer_skb2";
    /// kprobes on `nft_do_chain` and `ipt_do_table`/`ip6t_do_table`, and the kretprobe that
    /// reports their DROP verdicts.
    pub const PROG_NFT_ENTER: &str = "nft_chain_enter";
    pub const PROG_IPT_ENTER: &str = "ipt_table_enter";
    pub const PROG_VERDICT_EXIT: &str = "nf_verdict_exit";
    pub const NF_CALLS: &str = "NF_CALLS";
    pub const XDP_CONFIG: &str = "XDP_CONFIG";
    pub const XDP_EXCEPTIONS: &str = "XDP_EXCEPTIONS";
    pub const PROG_BPF_ENTER: &str = "bpf_enter";
    pub const PROG_BPF_EXIT: &str = "bpf_exit";
    pub const PROG_BPF_KPROBE: &str = "bpf_syscall_enter";
    pub const PROG_BPF_KRETPROBE: &str = "bpf_syscall_exit";
    pub const PROG_XDP_ATTACH_FAILED: &str = "xdp_attach_failed";
    pub const PROG_XDP_EXCEPTION_RAW: &str = "xdp_exception_raw";
    pub const PROG_XDP_EXCEPTION_TP: &str = "xdp_exception_tp";
    pub const PROG_XDP_REDIRECT_ERR_RAW: &str = "xdp_redirect_err_raw";
    pub const PATH_CONFIG: &str = "PATH_CONFIG";
    /// Bytes waiting in `EVENTS` from which a record wakes userspace up.
    pub const WAKEUP_BYTES: &str = "WAKEUP_BYTES";
    pub const PATH_HOPS: &str = "PATH_HOPS";
    pub const PROG_PATH_RECEIVE: &str = "path_receive";
    pub const PROG_PATH_QUEUE: &str = "path_queue";
    pub const PROG_PATH_XMIT: &str = "path_xmit";
    pub const PROG_PATH_FREE: &str = "path_free";
    pub const PROG_PATH_CONSUME: &str = "path_consume";
    pub const PROG_PATH_DELIVER: &str = "path_deliver";
    /// The same hooks as raw tracepoints (no trace record), where BTF gives their prototypes.
    pub const PROG_PATH_RECEIVE_RAW: &str = "path_rcv_raw";
    pub const PROG_PATH_QUEUE_RAW: &str = "path_queue_raw";
    pub const PROG_PATH_XMIT_RAW: &str = "path_xmit_raw";
    pub const PROG_PATH_FREE_RAW: &str = "path_free_raw";
    pub const PROG_PATH_CONSUME_RAW: &str = "path_cons_raw";
    pub const PROG_PATH_DELIVER_RAW: &str = "path_deliv_raw";
    /// kprobes on datapath functions, by the position of their skb argument.
    pub const PROG_PATH_FN_SKB0: &str = "path_fn_skb0";
    pub const PROG_PATH_FN_SKB1: &str = "path_fn_skb1";
    pub const PROG_PATH_FN_SKB2: &str = "path_fn_skb2";
}

/// Discriminates the records in the `EVENTS` ring buffer: each record starts with an
/// [`EventHeader`] whose `kind` is one of these.
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Drop = 1,
    /// An rtnetlink link request leaving a process (`sendmsg`/`sendto`).
    NetlinkRequest = 2,
    /// The kernel's answer to it (`NLMSG_ERROR`, read at `recvmsg`/`recvfrom` exit).
    NetlinkAck = 3,
    /// The kernel's extended-ack message (`netlink:netlink_extack`).
    NetlinkExtack = 4,
    /// A link-changing ioctl (SIOCSIFHWADDR, SIOCSIFFLAGS, SIOCSIFNAME): `data` is the `ifreq`.
    IoctlRequest = 5,
    /// The kernel asked modprobe for a module (`module:module_request`): `data` is its name.
    ModuleRequest = 6,
    /// A module was loaded (`module:module_load`): `data` is its name.
    ModuleLoad = 7,
    /// What `rtnl_newlink`/`setlink`/`dellink` returned (kretprobe): `data` holds the
    /// request's sequence number (u32) and the return value (i32).
    RtnlResult = 8,
    /// A tracepoint record copied as it is ([`TraceRecordEvent`]): userspace reads its fields
    /// by name with the tracepoint's tracefs format.
    TraceRecord = 9,
    /// A kernel function about to answer a packet with a RST or an ICMP error
    /// ([`AnswerEvent`]): `tcp_v4_send_reset`, `nf_send_reset`, `nf_send_unreach`, …
    PacketAnswer = 10,
    /// A netfilter table or chain returned DROP ([`VerdictEvent`]).
    NetfilterVerdict = 11,
    /// A `bpf()` command that loads or attaches something, and its result ([`BpfEvent`]).
    BpfCommand = 12,
    /// A traced packet seen at a device or freed ([`PathEvent`]).
    PacketHop = 13,
}

/// Bytes of `union bpf_attr` and of the kernel's message a [`BpfEvent`] carries.
pub const BPF_ATTR_BYTES: usize = 128;
pub const BPF_MESSAGE_BYTES: usize = 256;

/// A `bpf()` command (PROG_LOAD, BTF_LOAD, LINK_CREATE) and what it returned. `attr` is the
/// caller's `union bpf_attr` (UAPI, append-only: userspace decodes it by the UAPI layout);
/// `message` is the kernel's text for a failed XDP link attach
/// (`xdp:bpf_xdp_link_attach_failed`), or the start of the verifier log of a failed
/// PROG_LOAD that asked for one.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BpfEvent {
    pub header: EventHeader,
    pub actor: Actor,
    /// The syscall's return value (a new fd, or -errno).
    pub ret: i64,
    pub cmd: u32,
    pub attr_len: u32,
    pub message_len: u32,
    pub _pad: u32,
    pub attr: [u8; BPF_ATTR_BYTES],
    pub message: [u8; BPF_MESSAGE_BYTES],
}

/// A `bpf()` command between syscall entry and exit (per thread).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct BpfPending {
    pub cmd: u32,
    pub attr_len: u32,
    pub message_len: u32,
    pub _pad: u32,
    pub attr: [u8; BPF_ATTR_BYTES],
    pub message: [u8; BPF_MESSAGE_BYTES],
}

/// Key of the in-kernel XDP exception counters: where and which program.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct XdpExceptionKey {
    pub netns: u32,
    pub ifindex: u32,
    pub prog_id: u32,
    /// The XDP action that raised it (XDP_ABORTED = 0, or an invalid one), or
    /// [`XDP_REDIRECT_FAILED`] | -errno for a redirect that failed.
    pub action: u32,
}

/// Marks a failed XDP_REDIRECT in [`XdpExceptionKey::action`]; the low bits hold the errno.
pub const XDP_REDIRECT_FAILED: u32 = 0x8000_0000;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct XdpExceptionCount {
    pub count: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub ifname: [u8; 16],
    pub prog_name: [u8; 16],
}

/// Offsets and values the XDP/BPF programs need (tracefs, BTF, UAPI enum values via BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct XdpConfig {
    /// `sys_enter_bpf`: `cmd`, `uattr`, `size`; `sys_exit_bpf`: `ret`.
    pub tp_bpf_cmd: u32,
    pub tp_bpf_uattr: u32,
    pub tp_bpf_size: u32,
    pub tp_bpf_ret: u32,
    /// `xdp:bpf_xdp_link_attach_failed`: the `msg` data_loc field.
    pub tp_attach_failed_msg: u32,
    /// `xdp:xdp_exception` (classic tracepoint backend): `prog_id`, `act`, `ifindex`.
    pub tp_exc_prog_id: u32,
    pub tp_exc_act: u32,
    pub tp_exc_ifindex: u32,
    /// `enum bpf_cmd` values kept.
    pub cmd_prog_load: u32,
    pub cmd_btf_load: u32,
    pub cmd_link_create: u32,
    /// dptrace's own process: its bpf() calls are not reported.
    pub own_tgid: u32,
    /// `net_device.ifindex` / `name` / `nd_net.net`, `net.ns.inum`, `bpf_prog.aux`,
    /// `bpf_prog_aux.id` / `name` (BTF; raw tracepoint backend).
    pub dev_ifindex: u32,
    pub dev_name: u32,
    pub dev_net: u32,
    pub net_inum: u32,
    pub prog_aux: u32,
    pub aux_id: u32,
    pub aux_name: u32,
    /// kprobes on the `bpf()` syscall wrapper, whose argument is the user's saved registers:
    /// where `struct pt_regs` keeps the first three syscall arguments (BTF).
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    pub _pad: u32,
}

impl XdpConfig {
    pub const fn absent() -> Self {
        Self {
            tp_bpf_cmd: ABSENT,
            tp_bpf_uattr: ABSENT,
            tp_bpf_size: ABSENT,
            tp_bpf_ret: ABSENT,
            tp_attach_failed_msg: ABSENT,
            tp_exc_prog_id: ABSENT,
            tp_exc_act: ABSENT,
            tp_exc_ifindex: ABSENT,
            cmd_prog_load: ABSENT,
            cmd_btf_load: ABSENT,
            cmd_link_create: ABSENT,
            own_tgid: 0,
            dev_ifindex: ABSENT,
            dev_name: ABSENT,
            dev_net: ABSENT,
            net_inum: ABSENT,
            prog_aux: ABSENT,
            aux_id: ABSENT,
            aux_name: ABSENT,
            regs_arg0: ABSENT,
            regs_arg1: ABSENT,
            regs_arg2: ABSENT,
            _pad: 0,
        }
    }
}

/// Where a [`VerdictEvent`] comes from.
pub const VERDICT_NFT: u32 = 1;
pub const VERDICT_IPT: u32 = 2;

/// Bytes kept of a table or chain name.
pub const NF_NAME_BYTES: usize = 32;

/// Tracepoints whose records the netfilter family copies whole: the `source` of a
/// [`TraceRecordEvent`] and the index into [`NetfilterConfig::records`].
#[repr(u16)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordSource {
    /// `tcp:tcp_send_reset`: the stack sent a RST (no listener since 6.10; full sockets before).
    TcpSendReset = 0,
    /// `tcp:tcp_receive_reset`: a socket received a RST (the client's "connection refused").
    TcpReceiveReset = 1,
    /// `icmp:icmp_send` (6.15+): the stack or a REJECT rule sent an ICMP error.
    IcmpSend = 2,
    /// `sock:inet_sock_set_state`, only transitions to TCP_SYN_SENT: a connection attempt.
    TcpConnect = 3,
}

/// How many [`RecordSource`]s there are.
pub const RECORD_SOURCES: usize = 4;

/// Bytes of a tracepoint record (after the 8-byte common header) a [`TraceRecordEvent`] carries.
pub const TRACE_RECORD_BYTES: usize = 128;

/// Bytes of a netlink message (request, ack or extack text) carried by a [`NetlinkEvent`].
pub const NETLINK_BYTES: usize = 512;

/// Common prefix of every ring-buffer record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u16,
    pub _pad: u16,
    /// CPU the event was recorded on.
    pub cpu: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Thread-group id (the process id) of the task current when the event fired.
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}

/// A packet freed through `kfree_skb` (a drop), with the device, netns and the first
/// [`HEADER_BYTES`] bytes from its network header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DropEvent {
    pub header: EventHeader,
    /// Address of the `sk_buff`: correlates events about the same packet.
    pub skb: u64,
    /// Return address of the caller that freed the packet (symbolised in userspace).
    pub location: u64,
    /// Raw `enum skb_drop_reason` value; [`ABSENT`] when the kernel has no reason field.
    pub reason: u32,
    /// Inode of the network namespace (from the device, else the socket); 0 if unknown.
    pub netns: u32,
    /// Interface index of `skb->dev`; 0 when the packet had no device.
    pub ifindex: u32,
    /// The ethertype as the tracepoint reports it (`ntohs(skb->protocol)`: host byte order).
    pub protocol: u16,
    /// How many bytes of `headers` are packet data (the rest is padding or stale memory).
    pub header_len: u16,
    pub ifname: [u8; 16],
    pub headers: [u8; HEADER_BYTES],
}

/// Who did something: the task's network namespace and parent, beyond the common header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Actor {
    /// Inode of the task's network namespace (0 if unknown).
    pub netns: u32,
    pub parent_pid: u32,
    pub parent_comm: [u8; 16],
    /// `bpf_get_current_cgroup_id()`: the task's cgroup v2 id (the cgroup directory's inode);
    /// meaningless on cgroup v1-only hosts.
    pub cgroup_id: u64,
}

/// A netlink request, ack or extack message, raw: userspace parses it.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetlinkEvent {
    pub header: EventHeader,
    pub actor: Actor,
    /// Bytes of `data` that are valid.
    pub len: u32,
    /// The ioctl command of an [`EventKind::IoctlRequest`]; 0 otherwise.
    pub aux: u32,
    pub data: [u8; NETLINK_BYTES],
}

/// A packet the kernel is answering (kprobe on the answering function): the packet as a
/// [`DropEvent`] whose `location` is the function's address and `reason` is [`ABSENT`], and
/// the function's first three arguments (socket, ICMP type and code, depending on it).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AnswerEvent {
    pub packet: DropEvent,
    pub args: [u64; 3],
}

/// A DROP verdict of `nft_do_chain` (base chain and table) or `ipt_do_table` (table), with
/// the packet as a [`DropEvent`] (its `location` is the function's address).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct VerdictEvent {
    pub packet: DropEvent,
    pub table: [u8; NF_NAME_BYTES],
    /// Empty for `ipt_do_table` (it sees tables, not chains).
    pub chain: [u8; NF_NAME_BYTES],
    /// `NFPROTO_*` of the table, and the `NF_INET_*` hook of the call.
    pub family: u32,
    pub hook: u32,
    /// The function's return value (`NF_DROP` is 0).
    pub verdict: u32,
    /// [`VERDICT_NFT`] or [`VERDICT_IPT`].
    pub source: u32,
}

/// One `nft_do_chain`/`ipt_do_table` call in progress, between its kprobe and kretprobe.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NfFrame {
    pub skb: u64,
    /// The `nft_chain` or `xt_table`.
    pub object: u64,
    pub state: u64,
    pub source: u64,
}

/// Calls in progress per thread: netfilter nests (a REJECT sends its answer through the
/// OUTPUT hooks from inside the INPUT call), so each thread keeps a small stack.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NfStack {
    pub depth: u64,
    pub frames: [NfFrame; 4],
}

/// A tracepoint record, copied from just after its common header.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TraceRecordEvent {
    pub header: EventHeader,
    /// A [`RecordSource`].
    pub source: u16,
    /// Valid bytes of `record` (the record's size less its common header, capped).
    pub len: u16,
    /// Network namespace inode and interface index of the record's skb (else its socket); 0
    /// when unknown.
    pub netns: u32,
    pub ifindex: u32,
    pub _pad: u32,
    /// `record[i]` is the record's byte `8 + i`: tracefs field offsets less 8.
    pub record: [u8; TRACE_RECORD_BYTES],
}

/// Where, in one tracepoint's record, the netfilter programs find what they need.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordConfig {
    /// Record size from the format (0: do not record this source).
    pub len: u32,
    /// Offsets of the `skbaddr` and `skaddr` fields ([`ABSENT`] when the record has none).
    pub skb: u32,
    pub sk: u32,
    pub _pad: u32,
}

impl RecordConfig {
    pub const fn absent() -> Self {
        Self { len: 0, skb: ABSENT, sk: ABSENT, _pad: 0 }
    }
}

/// Offsets and values the netfilter family's programs need, from tracefs and BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetfilterConfig {
    /// Indexed by [`RecordSource`].
    pub records: [RecordConfig; RECORD_SOURCES],
    /// `sock:inet_sock_set_state` fields `newstate` and `protocol`, and the values kept.
    pub state_newstate: u32,
    pub state_protocol: u32,
    pub tcp_syn_sent: u32,
    pub ipproto_tcp: u32,
    /// `sk_buff.dev`, `net_device.ifindex` / `nd_net.net`, `sock.__sk_common.skc_net.net`,
    /// `net.ns.inum` (BTF).
    pub skb_dev: u32,
    pub dev_ifindex: u32,
    pub dev_net: u32,
    pub sk_net: u32,
    pub net_inum: u32,
    /// Verdict kprobes: `nft_pktinfo.skb` / `.state` (or `.xt.state` before 5.16),
    /// `nft_chain.name` / `.table`, `nft_table.name` / `.family`, `xt_table.name` / `.af`,
    /// `nf_hook_state.hook` (BTF).
    pub nft_pkt_skb: u32,
    pub nft_pkt_state: u32,
    pub nft_chain_name: u32,
    pub nft_chain_table: u32,
    pub nft_table_name: u32,
    pub nft_table_family: u32,
    pub xt_table_name: u32,
    pub xt_table_af: u32,
    pub state_hook: u32,
    /// Which arguments of `ipt_do_table` are the skb, the hook state and the table.
    pub ipt_arg_skb: u32,
    pub ipt_arg_state: u32,
    pub ipt_arg_table: u32,
}

impl NetfilterConfig {
    pub const fn absent() -> Self {
        Self {
            records: [RecordConfig::absent(); RECORD_SOURCES],
            state_newstate: ABSENT,
            state_protocol: ABSENT,
            tcp_syn_sent: ABSENT,
            ipproto_tcp: ABSENT,
            skb_dev: ABSENT,
            dev_ifindex: ABSENT,
            dev_net: ABSENT,
            sk_net: ABSENT,
            net_inum: ABSENT,
            nft_pkt_skb: ABSENT,
            nft_pkt_state: ABSENT,
            nft_chain_name: ABSENT,
            nft_chain_table: ABSENT,
            nft_table_name: ABSENT,
            nft_table_family: ABSENT,
            xt_table_name: ABSENT,
            xt_table_af: ABSENT,
            state_hook: ABSENT,
            ipt_arg_skb: ABSENT,
            ipt_arg_state: ABSENT,
            ipt_arg_table: ABSENT,
        }
    }
}

/// Offsets the link-control-plane programs need: tracepoint fields from tracefs, struct
/// members from BTF ([`ABSENT`] disables the read).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkConfig {
    /// `sys_enter_sendmsg`/`sys_enter_recvmsg`: the `msg` field.
    pub tp_msghdr: u32,
    /// `sys_enter_sendto`: `buff` and `len`; `sys_enter_recvfrom`: `ubuf`.
    pub tp_sendto_buff: u32,
    pub tp_sendto_len: u32,
    pub tp_recvfrom_buf: u32,
    /// `sys_exit_*`: `ret`.
    pub tp_exit_ret: u32,
    /// `netlink:netlink_extack`: the `msg` data_loc field.
    pub tp_extack_msg: u32,
    /// `struct user_msghdr.msg_iov`, `struct iovec.iov_base` / `.iov_len` (user ABI).
    pub msghdr_iov: u32,
    pub iov_base: u32,
    pub iov_len: u32,
    /// task_struct → nsproxy → net_ns → ns.inum, and task_struct.real_parent / tgid / comm.
    pub task_nsproxy: u32,
    pub nsproxy_net: u32,
    pub net_inum: u32,
    pub task_parent: u32,
    pub task_tgid: u32,
    pub task_comm: u32,
    /// `sys_enter_ioctl`: `cmd` and `arg`.
    pub tp_ioctl_cmd: u32,
    pub tp_ioctl_arg: u32,
    /// `module:module_request` / `module:module_load`: the `name` data_loc field.
    pub tp_module_request_name: u32,
    pub tp_module_load_name: u32,
    /// kprobes backend: which argument of `rtnl_newlink`/`setlink`/`dellink` is the `nlmsghdr`.
    pub arg_nlh: u32,
    /// sockets backend: `struct sock` members read at the raw tracepoint
    /// `sock_send_length(sk, ret, flags)`: `__sk_common.skc_family` and `sk_protocol` (both
    /// 16 bits), the receive queue's head and its `prev` (the newest message), and
    /// `sk_buff.data`.
    pub sk_family: u32,
    pub sk_protocol: u32,
    pub sk_queue: u32,
    pub sk_queue_prev: u32,
    pub skb_data: u32,
    /// sockets backend: where `struct pt_regs` keeps the syscall number and its second and
    /// third arguments (the user buffer or msghdr, and the length).
    pub regs_nr: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    /// sockets backend: this architecture's numbers of the syscalls that carry netlink
    /// requests (the first argument is the socket, then buffer and length or msghdr).
    pub sys_sendmsg: u32,
    pub sys_sendto: u32,
    pub sys_write: u32,
    /// sockets backend: 1 when kernel messages and module requests are held until their
    /// request's send completes (its event is emitted then, after them).
    pub defer_messages: u32,
    pub _pad: u32,
}

impl LinkConfig {
    pub const fn absent() -> Self {
        Self {
            tp_msghdr: ABSENT,
            tp_sendto_buff: ABSENT,
            tp_sendto_len: ABSENT,
            tp_recvfrom_buf: ABSENT,
            tp_exit_ret: ABSENT,
            tp_extack_msg: ABSENT,
            msghdr_iov: ABSENT,
            iov_base: ABSENT,
            iov_len: ABSENT,
            task_nsproxy: ABSENT,
            nsproxy_net: ABSENT,
            net_inum: ABSENT,
            task_parent: ABSENT,
            task_tgid: ABSENT,
            task_comm: ABSENT,
            tp_ioctl_cmd: ABSENT,
            tp_ioctl_arg: ABSENT,
            tp_module_request_name: ABSENT,
            tp_module_load_name: ABSENT,
            arg_nlh: ABSENT,
            sk_family: ABSENT,
            sk_protocol: ABSENT,
            sk_queue: ABSENT,
            sk_queue_prev: ABSENT,
            skb_data: ABSENT,
            regs_nr: ABSENT,
            regs_arg1: ABSENT,
            regs_arg2: ABSENT,
            sys_sendmsg: ABSENT,
            sys_sendto: ABSENT,
            sys_write: ABSENT,
            defer_messages: 0,
            _pad: 0,
        }
    }
}

/// Where the fields the drop program reads live on the running kernel.
///
/// Tracepoint offsets come from `events/skb/kfree_skb/format`; struct member offsets from
/// BTF. [`ABSENT`] disables the corresponding read.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropConfig {
    /// Offsets of the tracepoint record fields.
    pub tp_skbaddr: u32,
    pub tp_location: u32,
    pub tp_protocol: u32,
    pub tp_reason: u32,
    /// The value of `SKB_CONSUMED` (normal frees reported as kfree_skb on some kernels).
    pub reason_consumed: u32,
    /// The value of `SKB_NOT_DROPPED_YET`, never a drop either.
    pub reason_not_dropped: u32,
    /// `struct sk_buff` members.
    pub skb_dev: u32,
    pub skb_sk: u32,
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_tail: u32,
    /// `struct net_device` members.
    pub dev_ifindex: u32,
    pub dev_name: u32,
    /// Offset of `nd_net.net` (the `struct net *`) inside `net_device`.
    pub dev_net: u32,
    /// Offset of `__sk_common.skc_net.net` inside `struct sock`.
    pub sk_net: u32,
    /// Offset of `ns.inum` inside `struct net`.
    pub net_inum: u32,
    /// `sk_buff.protocol` (big-endian ethertype): kprobe/fentry backends read it from the skb.
    pub skb_protocol: u32,
    /// kprobe/fentry backends: which argument of the probed function is the skb, and which
    /// the drop reason ([`ABSENT`] when the function has none, e.g. `kfree_skb` before 5.17).
    pub arg_skb: u32,
    pub arg_reason: u32,
    /// Keeps the u64s below aligned without implicit padding (the struct is copied as bytes).
    pub _pad: u32,
    /// kprobe/fentry backends: the probed function's text range (from kallsyms). The first
    /// stack frame above it is the caller that dropped the packet: the event's location.
    pub fn_start: u64,
    pub fn_end: u64,
}

impl DropConfig {
    /// Every read disabled: what the object file holds until userspace fills it in.
    pub const fn absent() -> Self {
        Self {
            tp_skbaddr: ABSENT,
            tp_location: ABSENT,
            tp_protocol: ABSENT,
            tp_reason: ABSENT,
            reason_consumed: ABSENT,
            reason_not_dropped: ABSENT,
            skb_dev: ABSENT,
            skb_sk: ABSENT,
            skb_head: ABSENT,
            skb_network_header: ABSENT,
            skb_tail: ABSENT,
            dev_ifindex: ABSENT,
            dev_name: ABSENT,
            dev_net: ABSENT,
            sk_net: ABSENT,
            net_inum: ABSENT,
            skb_protocol: ABSENT,
            arg_skb: ABSENT,
            arg_reason: ABSENT,
            _pad: 0,
            fn_start: 0,
            fn_end: 0,
        }
    }
}

/// Bytes of a traced packet a [`PathEvent`] carries, from its link-layer header (else its
/// network header): outer Ethernet + IPv6 + UDP + VXLAN + inner Ethernet + IPv6 + TCP fit.
pub const PATH_SNAP_BYTES: usize = 256;

/// Where on its way a [`PathEvent`] saw the packet (`PathEvent::hook`).
pub mod path_hook {
    /// `net:netif_receive_skb`: a device received it.
    pub const RECEIVE: u32 = 1;
    /// `net:net_dev_queue`: handed to a device for transmission.
    pub const QUEUE: u32 = 2;
    /// `net:net_dev_xmit` with a non-zero return code: the driver refused it.
    pub const XMIT_ERROR: u32 = 3;
    /// `skb:kfree_skb`: dropped (`result` is the drop reason).
    pub const FREE: u32 = 4;
    /// `skb:consume_skb`: delivered or done with, normally.
    pub const CONSUME: u32 = 5;
    /// `skb:skb_copy_datagram_iovec`: copied to a reading socket. UDP and TCP free what they
    /// delivered without `consume_skb`, so without this the packet's `sk_buff` would stay
    /// tracked and the next packet given the same memory would join its path.
    pub const DELIVER: u32 = 6;
    /// Size of the per-tracepoint arrays in [`super::PathConfig`] (indexed by the values above).
    pub const COUNT: usize = 7;
    /// A kernel function (kprobe, where the kernel has kprobes) saw an already traced
    /// packet: `location` is the function's address. Not a tracepoint, not in the arrays.
    pub const FUNCTION: u32 = 7;
}

/// One sighting of a traced packet (the `path` family).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathEvent {
    pub header: EventHeader,
    pub skb: u64,
    /// Assigned in the kernel when the packet first matched the filter; kept while the same
    /// `sk_buff` travels on (across veths, bridges, tunnels, NAT), so hops join by it.
    pub trace_id: u64,
    /// For [`path_hook::FREE`]: the address that freed the packet; for
    /// [`path_hook::FUNCTION`]: the function's address.
    pub location: u64,
    /// A [`path_hook`] value.
    pub hook: u32,
    pub netns: u32,
    pub ifindex: u32,
    /// `skb->len`.
    pub len: u32,
    /// The drop reason ([`path_hook::FREE`], [`ABSENT`] before 5.17) or the driver's return
    /// code ([`path_hook::XMIT_ERROR`]); 0 otherwise.
    pub result: u32,
    /// Offsets in `data` of the link-layer and network headers; [`PATH_NO_HEADER`] if absent.
    pub l2_offset: u16,
    pub l3_offset: u16,
    /// Valid bytes of `data`.
    pub caplen: u16,
    /// `ntohs(skb->protocol)`.
    pub protocol: u16,
    pub ifname: [u8; 16],
    pub data: [u8; PATH_SNAP_BYTES],
}

/// Marks an absent header offset in a [`PathEvent`].
pub const PATH_NO_HEADER: u16 = u16::MAX;

/// Filter clauses the kernel evaluates, and terms per clause (see [`PathConfig::filter`]).
pub const FILTER_CLAUSES: usize = 4;
pub const FILTER_TERMS: usize = 4;

/// [`FilterTerm::kind`] values.
pub mod filter_kind {
    /// An unused slot.
    pub const NONE: u8 = 0;
    /// `FilterTerm::proto` is the IP protocol (`tcp`, `udp`, `icmp`, …).
    pub const PROTO: u8 = 1;
    /// `FilterTerm::family` is the IP version (`ip`, `ip6`).
    pub const FAMILY: u8 = 2;
    /// `addr`/`prefix` of `family` (`host`, `net`).
    pub const ADDR: u8 = 3;
    /// `port_lo..=port_hi` of TCP, UDP or SCTP (`port`, `portrange`).
    pub const PORT: u8 = 4;
}

/// [`FilterTerm::side`] values.
pub mod filter_side {
    pub const EITHER: u8 = 0;
    pub const SRC: u8 = 1;
    pub const DST: u8 = 2;
}

/// One primitive of a pcap-filter expression, as the kernel evaluates it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FilterTerm {
    /// A [`filter_kind`] value.
    pub kind: u8,
    /// A [`filter_side`] value.
    pub side: u8,
    /// 1: the term matches when the primitive does not.
    pub negate: u8,
    /// 4 or 6.
    pub family: u8,
    pub proto: u8,
    /// Prefix length of `addr` (32/128 for a host).
    pub prefix: u8,
    pub port_lo: u16,
    pub port_hi: u16,
    pub _pad: [u8; 6],
    /// Network byte order; IPv4 in the first 4 bytes.
    pub addr: [u8; 16],
}

/// Offsets and settings of the path family, from tracefs, BTF and the command line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathConfig {
    /// The kernel part of the filter, in conjunctive normal form: a header set matches when,
    /// for each of the first `clauses` rows, one of its terms matches it; a packet is traced
    /// when its outer headers match, or its inner (VXLAN/Geneve) ones. Userspace checks the
    /// whole expression again.
    pub filter: [[FilterTerm; FILTER_TERMS]; FILTER_CLAUSES],
    pub clauses: u32,
    /// 1: count hops and latencies in `PATH_HOPS` instead of sending per-packet events.
    pub aggregate: u32,
    /// UDP destination ports whose payload is VXLAN, and Geneve's (0: unused).
    pub vxlan_ports: [u16; 3],
    pub geneve_port: u16,
    /// A tracked `sk_buff` not seen for this long is forgotten (its memory may have been
    /// freed without a tracepoint and reused by another packet).
    pub follow_ns: u64,
    /// Offset of `skbaddr` in each hook's tracepoint record, indexed by [`path_hook`].
    pub tp_skb: [u32; path_hook::COUNT],
    /// `net_dev_xmit`'s `rc`; `kfree_skb`'s `reason` and `location`.
    pub tp_xmit_rc: u32,
    pub tp_free_reason: u32,
    pub tp_free_location: u32,
    /// `sk_buff` members (BTF); the rest come from [`DropConfig`].
    pub skb_len: u32,
    pub skb_data: u32,
    pub skb_mac_header: u32,
}

impl PathConfig {
    pub const fn absent() -> Self {
        Self {
            filter: [[FilterTerm {
                kind: 0,
                side: 0,
                negate: 0,
                family: 0,
                proto: 0,
                prefix: 0,
                port_lo: 0,
                port_hi: 0,
                _pad: [0; 6],
                addr: [0; 16],
            }; FILTER_TERMS]; FILTER_CLAUSES],
            clauses: 0,
            aggregate: 0,
            vxlan_ports: [0; 3],
            geneve_port: 0,
            follow_ns: 0,
            tp_skb: [ABSENT; path_hook::COUNT],
            tp_xmit_rc: ABSENT,
            tp_free_reason: ABSENT,
            tp_free_location: ABSENT,
            skb_len: ABSENT,
            skb_data: ABSENT,
            skb_mac_header: ABSENT,
        }
    }
}

/// A traced `sk_buff` between hops (kernel map `PATH_TRACKED`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathTrack {
    pub trace_id: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    pub last: PathPoint,
}

/// A device and hook: one point of a path.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PathPoint {
    pub netns: u32,
    pub ifindex: u32,
    pub hook: u32,
    pub _pad: u32,
}

/// Key of the aggregate counters: a hop from one point to the next. `from.hook == 0` counts
/// packets first seen at `to`; `from.hook ==` [`PATH_HOP_END_TO_END`] counts journeys that
/// ended at `to`, with their whole duration.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PathHopKey {
    pub from: PathPoint,
    pub to: PathPoint,
}

/// See [`PathHopKey`].
pub const PATH_HOP_END_TO_END: u32 = u32::MAX;

/// log2 latency buckets of [`PathHopStats`]: bucket i counts deltas in [2^i, 2^(i+1)) ns.
pub const LATENCY_BUCKETS: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PathHopStats {
    pub packets: u64,
    pub bytes: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain `repr(C)` integers and byte arrays, no padding-dependent invariants.
    unsafe impl aya::Pod for super::DropConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LinkConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetfilterConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NfStack {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::XdpConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::XdpExceptionKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::XdpExceptionCount {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PathConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PathHopKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PathHopStats {}
}
