# shell: POSIX sh probe, run as `/bin/sh shell.sh WORKDIR` (also under
# `busybox sh`).  Redirections, pipes through cat/sort/wc/tr/head, here-docs,
# ls, mkdir -p, cp, mv, rm, cd/pwd, hostname, test, subshells.
# Output is "name: value" lines; no $$ or other pids, no times.

set -u
WORKDIR=$1
cd "$WORKDIR" || exit 90
umask 022

say() { printf '%s: %s\n' "$1" "$2"; }
# wc output is padded differently by coreutils and busybox: strip blanks
count() { wc "$1" | tr -d ' \t'; }
# join lines with single spaces, no trailing blank
words() { tr '\n' ' ' | sed 's/ *$//'; }

say start.pwd "$(pwd)"
say start.pwd_is_workdir "$([ "$(pwd)" = "$WORKDIR" ] && echo yes || echo no)"
say start.empty "$([ -z "$(ls -A)" ] && echo yes || echo no)"

# redirections
echo one > out.txt
echo two >> out.txt
printf 'three\n' >> out.txt
say redirect.append "$(cat out.txt | tr '\n' ,)"
echo replaced > out.txt
say redirect.truncate "$(cat out.txt)"
read -r first < out.txt
say redirect.stdin "$first"
ls missing-file > err.txt 2>&1
say redirect.2to1_captured "$([ -s err.txt ] && echo yes || echo no)"
{ echo to-stdout; echo to-stderr >&2; } > both.txt 2>&1
say redirect.group_both "$(sort both.txt | tr '\n' ,)"
{ echo only-err >&2; } 2> err2.txt > /dev/null
say redirect.stderr_file "$(cat err2.txt)"
exec 3> fd3.txt
echo via-fd3 >&3
exec 3>&-
say redirect.exec_fd3 "$(cat fd3.txt)"
exec 4< out.txt
read -r line4 <&4
exec 4<&-
say redirect.exec_fd4_read "$line4"
: > empty.txt
say redirect.colon_truncate "$(count -c < empty.txt)"
echo noclobber-test > nc.txt
if (set -C; echo again > nc.txt) 2>/dev/null; then say redirect.noclobber allowed; else say redirect.noclobber refused; fi

# pipes
printf 'pear\napple\nfig\napple\nbanana\n' > fruit.txt
say pipe.sort "$(cat fruit.txt | sort | words)"
say pipe.sort_u "$(sort -u fruit.txt | words)"
say pipe.wc_l "$(cat fruit.txt | wc -l | tr -d ' ')"
say pipe.head_2 "$(sort fruit.txt | head -n 2 | words)"
say pipe.tr_upper "$(head -n 1 fruit.txt | tr a-z A-Z)"
say pipe.long "$(cat fruit.txt | sort | cat | tr a-z A-Z | head -n 3 | wc -l | tr -d ' ')"
say pipe.count_chars "$(count -c < fruit.txt)"
say pipe.exit_status_last "$(false | true; echo $?)"
say pipe.exit_status_fail "$(true | false; echo $?)"

# here-documents
cat > heredoc.txt <<EOF
workdir-relative: \$WORKDIR stays literal
expanded: ${WORKDIR##*/}-tail
EOF
say heredoc.lines "$(count -l < heredoc.txt)"
say heredoc.line1 "$(head -n 1 heredoc.txt)"
say heredoc.line2 "$(tail -n 1 heredoc.txt)"
say heredoc.quoted "$(cat <<'EOF'
$HOME and $(not run)
EOF
)"
say heredoc.to_pipe "$(tr a-z A-Z <<EOF
lower
EOF
)"

# mkdir -p, cp, mv, rm, ls
mkdir -p a/b/c
mkdir -p a/b/c
say mkdir_p.status "$?"
echo data > a/b/c/file
cp a/b/c/file a/copy
say cp.content "$(cat a/copy)"
cp -R a/b a/b2
say cp_r.content "$(cat a/b2/c/file)"
mv a/copy a/moved
say mv.old_gone "$([ -e a/copy ] && echo no || echo yes)"
say mv.new "$(cat a/moved)"
mv a/b2 renamed-dir
say mv.dir "$([ -d renamed-dir/c ] && echo yes || echo no)"
rm a/moved
say rm.file "$([ -e a/moved ] && echo no || echo yes)"
rm -r renamed-dir
say rm_r.dir "$([ -e renamed-dir ] && echo no || echo yes)"
rm -f does-not-exist
say rm_f.missing_status "$?"
rm does-not-exist 2>/dev/null
say rm.missing_status_nonzero "$([ $? -ne 0 ] && echo yes || echo no)"
ln -s a/b/c/file symlink
ln a/b/c/file hardlink
say ln.symlink_read "$(cat symlink)"
say ln.hardlink_read "$(cat hardlink)"
say ls.workdir "$(ls | words)"
say ls.a "$(ls a | words)"
say ls.A_count "$(ls -A | wc -l | tr -d ' ')"
say ls.missing_status_nonzero "$(ls nope >/dev/null 2>&1; [ $? -ne 0 ] && echo yes || echo no)"
touch a/t1 a/t2
say touch.exists "$([ -f a/t1 ] && [ -f a/t2 ] && echo yes || echo no)"
chmod 750 a/t1
say chmod.x_bit "$([ -x a/t1 ] && echo yes || echo no)"
say glob.star "$(echo a/t*)"
say glob.nomatch "$(echo a/zz*)"

# test -f / -d / -e / -s / -L
say test.f_file "$([ -f out.txt ] && echo yes || echo no)"
say test.f_dir "$([ -f a ] && echo yes || echo no)"
say test.d_dir "$([ -d a/b ] && echo yes || echo no)"
say test.e_missing "$([ -e missing ] && echo yes || echo no)"
say test.s_empty "$([ -s empty.txt ] && echo yes || echo no)"
say test.L_symlink "$([ -L symlink ] && echo yes || echo no)"
say test.h_file "$([ -h out.txt ] && echo yes || echo no)"
say test.nt "$([ out.txt -ef out.txt ] && echo same || echo differ)"
say test.ef_hardlink "$([ hardlink -ef a/b/c/file ] && echo yes || echo no)"

# cd and pwd
cd a/b
say cd.pwd "$(pwd)"
say cd.pwd_rel "${PWD#"$WORKDIR"}"
cd c && say cd.nested "$(pwd)"
cd ../../.. || exit 91
say cd.dotdot "$(pwd)"
cd "$WORKDIR/symlink" 2>/dev/null
say cd.into_file_symlink_status_nonzero "$([ $? -ne 0 ] && echo yes || echo no)"
mkdir -p real-dir && ln -s real-dir dir-link
cd dir-link
say cd.logical_pwd "$(pwd)"
say cd.physical_pwd "$(pwd -P)"
cd "$WORKDIR" || exit 92
say cd.missing_status_nonzero "$( (cd no-such-dir) 2>/dev/null; [ $? -ne 0 ] && echo yes || echo no)"

# subshells do not leak state
X=outer
( X=inner; cd a; say subshell.pwd "$(pwd)"; say subshell.var "$X" )
say subshell.after_var "$X"
say subshell.after_pwd "$(pwd)"
say subshell.exit "$( (exit 3); echo $?)"
say command_subst.nested "$(echo "$(echo "$(echo deep)")")"
sh_status=$(/bin/sh -c 'exit 5'; echo $?)
say child_sh.exit "$sh_status"
say child_sh.cwd "$(/bin/sh -c pwd)"

# background job and wait
( echo bg-ran > bg.txt; exit 7 ) &
wait $!
say background.status "$?"
say background.output "$(cat bg.txt)"

# hostname (must be the home host's name)
say hostname "$(hostname)"
say hostname_matches_uname "$([ "$(hostname)" = "$(uname -n)" ] && echo yes || echo no)"

# case, arithmetic, loops, functions
n=0
for f in one two three; do n=$((n + 1)); done
say loop.count "$n"
i=0
while [ "$i" -lt 5 ]; do i=$((i + 1)); done
say while.count "$i"
case "file.txt" in *.txt) say case.match txt ;; *) say case.match other ;; esac
say arith "$(( (7 * 6) % 10 + 1 ))"
myfn() { echo "fn:$1:$#"; return 4; }
say function.output "$(myfn x y)"
myfn x >/dev/null
say function.status "$?"
say set_u.unset_default "${UNSET_VAR_FOR_PROBE-default}"

# final listing of WORKDIR (sorted, names only)
say final.ls "$(ls | words)"
say final.find_count "$(find . | wc -l | tr -d ' ')"
exit 0
